"""Where commands run. `base` holds the interface and the one process loop; `local` runs here."""
