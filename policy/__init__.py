"""tff-k8s's Pulumi CrossGuard policy pack (``pulumi preview --policy-pack policy``).

``checks`` holds the rules as pure functions, ``tff_policies`` the pulumi-policy objects built on them,
``pack_config`` the per-stack policy config, and ``__main__`` (run by the Pulumi CLI) only builds the pack.
"""
