"""Rate limits: per tier and per route, in memory or in Redis (atomic scripts)."""
