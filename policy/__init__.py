"""tff-k8s's Pulumi CrossGuard policy pack (``pulumi preview --policy-pack policy``).

``resource_checks`` and ``stack_checks`` hold the rules as pure functions (``objects`` reads the
Kubernetes objects they judge), ``tff_policies`` the pulumi-policy objects built on them, ``pack_config``
the per-stack policy config, ``scan`` checkov over the rendered stacks, and ``__main__`` (run by the
Pulumi CLI) only builds the pack.
"""
