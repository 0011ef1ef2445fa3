"""State backends: the interfaces (`base`) and their in-process, SQLite and Redis homes."""
