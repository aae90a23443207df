"""The demo's story, in parts: where the bank runs, its processes, what is measured, and the check at the end."""
