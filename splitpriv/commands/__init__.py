"""One module per ``splitpriv`` sub-command."""
