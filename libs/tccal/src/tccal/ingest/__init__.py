"""What the calendar ingest services (ews-ingest, graph-ingest) share: the KV state's keys and JSON values
(`kv_state`), the never-reused sequence ceiling of a mailbox checkpoint (`sequences`), the AllocateSeats keeper
(`seats`) and the environment-tuned knobs (`tuning`)."""
