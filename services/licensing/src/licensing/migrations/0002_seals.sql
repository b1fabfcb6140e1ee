-- licensing schema, version 2: rows sealed with a key derived from the machine key (licensing/sealing.py), and
-- the high-water mark of the time seen, so that edited rows and a clock set back are detected.

-- The latest time this installation has seen (never moves back); sealed with the install id.
ALTER TABLE licensing.installation ADD COLUMN high_water timestamptz;
ALTER TABLE licensing.installation ADD COLUMN seal text;

-- HMAC of each row's values (NULL: written before version 2, not trusted).
ALTER TABLE licensing.licenses ADD COLUMN seal text;
ALTER TABLE licensing.online_check ADD COLUMN seal text;
