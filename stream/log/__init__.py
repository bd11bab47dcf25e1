"""margin.log, pure: its record format, the routing of inputs to it, the merge, and applying it."""
