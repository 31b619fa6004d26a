"""One test file per change kind: its lifecycle on a real server and its golden plans."""
