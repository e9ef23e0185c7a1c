"""Optional integrations: LiteLLM (``litellm/``), which imports its driver lazily. ``webhook``
and the ``litellm_*`` modules are the old paths of modules that moved (re-exports).
"""
