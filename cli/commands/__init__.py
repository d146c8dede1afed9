"""One module per `fleet` command or group of commands; `cli.main` adds them to the root."""
