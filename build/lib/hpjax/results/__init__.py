"""Everything a study leaves in its workdir: files (CSV, JSONL, JSON, markdown; every write
atomic) and Orbax checkpoints."""
