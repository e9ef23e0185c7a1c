"""Running it: the operator CLI, reports, metrics and background maintenance."""
