"""What a person reads: plots through one figure helper, markdown, and the guide's diagnostics."""
