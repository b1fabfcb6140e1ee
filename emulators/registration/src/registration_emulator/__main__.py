from registration_emulator.cli import main

if __name__ == "__main__":
    main(prog_name="python -m registration_emulator")
