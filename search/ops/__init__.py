"""Operating a store: collection info, aliases, snapshots and their commands."""
