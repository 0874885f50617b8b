"""The command line: one parser (``main``), shared argument groups (``args``), a module per subcommand."""
