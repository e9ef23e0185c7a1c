"""Trial credits, once: provisioning, the trial policy, abuse caps, locks, sign-up hooks
and the IdP webhook."""
