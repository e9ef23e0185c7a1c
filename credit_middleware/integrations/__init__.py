"""Optional integrations (LiteLLM, identity providers); each imports its driver lazily."""
