"""The tff-k8s CrossGuard policies: the checks of :mod:`policy.resource_checks` and
:mod:`policy.stack_checks` as pulumi-policy objects.

``policy/__main__.py`` builds the pack from :data:`POLICIES`; the tests import this module and call
each policy's ``validate`` the way the Pulumi engine does. Every policy is mandatory: a violation
fails ``pulumi preview``/``pulumi up``.

Two policies depend on the stack. They take, in this order:
1. the policy config (``--policy-pack-config``, written from the stack config by
   ``python -m policy.pack_config --stack <stack>``): ``requireDigest``, ``allowLoadBalancer``;
2. the stack config itself (``tff-k8s:deployment``: ``environment: prod`` requires digests,
   ``network.allow_load_balancer``), which the Pulumi CLI hands policy packs;
3. otherwise the strict answer: digests required, no LoadBalancer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pulumi
from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pydantic import ValidationError

from infra.stack_files import project_name
from infra.stack_inputs import DEPLOYMENT_KEY
from infra.stack_schema import DeploymentSettings
from policy import resource_checks, stack_checks
from policy.objects import kind_of
from policy.stack_checks import Declared, Finding

PACK_NAME = "tff-k8s"
ENFORCEMENT = EnforcementLevel.MANDATORY
REQUIRE_DIGEST = "requireDigest"
ALLOW_LOAD_BALANCER = "allowLoadBalancer"


def stack_deployment() -> Any | None:
    """The stack's validated ``tff-k8s:deployment`` settings, when the CLI handed the pack its stack
    config; None when there is none or it does not validate (then the program fails on its own)."""
    try:
        raw = pulumi.Config(project_name()).get_object(DEPLOYMENT_KEY)
    except Exception:  # no runtime settings, or malformed JSON
        return None
    if not isinstance(raw, Mapping):
        return None
    try:
        return DeploymentSettings.model_validate(dict(raw))
    except ValidationError:
        return None


def require_digest(config: Mapping[str, Any]) -> bool:
    if isinstance(config.get(REQUIRE_DIGEST), bool):
        return bool(config[REQUIRE_DIGEST])
    deployment = stack_deployment()
    return True if deployment is None else deployment.environment == "prod"


def allow_load_balancer(config: Mapping[str, Any]) -> bool:
    if isinstance(config.get(ALLOW_LOAD_BALANCER), bool):
        return bool(config[ALLOW_LOAD_BALANCER])
    deployment = stack_deployment()
    return False if deployment is None else bool(deployment.network.allow_load_balancer)


ResourceCheck = Callable[[str, Mapping[str, Any], Mapping[str, Any]], list[str]]


def _resource_validation(check: ResourceCheck) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        kind = kind_of(args.resource_type)
        if kind is None:
            return
        for problem in check(kind, args.props, args.get_config()):
            report_violation(problem, None)

    return validate


def _resource_policy(
    name: str, description: str, check: ResourceCheck, **kwargs: Any
) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(name, description, _resource_validation(check), ENFORCEMENT, **kwargs)


def _stack_validation(
    check: Callable[[list[Declared]], list[Finding]],
) -> Callable[[StackValidationArgs, ReportViolation], None]:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        declared = []
        for resource in args.resources:
            kind = kind_of(resource.resource_type)
            if kind is not None:
                cluster = resource.provider.urn if resource.provider is not None else ""
                declared.append(Declared(kind, resource.props, resource.urn, cluster))
        for finding in check(declared):
            report_violation(finding.message, finding.urn or None)

    return validate


CONTAINER_RESOURCES = _resource_policy(
    "container-resources",
    "Every container and init container sets cpu and memory requests and limits.",
    lambda kind, props, _config: resource_checks.container_resources(kind, props),
    remediation_steps="Set resources.requests and resources.limits (cpu and memory) on every container.",
)

POD_SECURITY_RESTRICTED = _resource_policy(
    "pod-security-restricted",
    'Pods meet Pod Security "restricted": non-root, no privilege escalation, all capabilities dropped, '
    "read-only root filesystem, RuntimeDefault seccomp, no host namespaces or hostPath volumes.",
    lambda kind, props, _config: resource_checks.pod_security_restricted(kind, props),
)

IMAGES_PINNED = _resource_policy(
    "images-pinned",
    "Container images carry a tag or digest, never 'latest'; prod stacks pin every image by digest.",
    lambda kind, props, config: resource_checks.image_pinned(kind, props, require_digest=require_digest(config)),
    config_schema=PolicyConfigSchema(
        properties={
            REQUIRE_DIGEST: {
                "type": "boolean",
                "description": "Require image@sha256:<digest> (default: true for environment prod, "
                "from the stack config; true when the stack config is not available).",
            }
        }
    ),
)

NO_LOAD_BALANCER = _resource_policy(
    "no-load-balancer-services",
    "No Service of type LoadBalancer unless the stack config allows it (deployment.network.allow_load_balancer).",
    lambda kind, props, config: resource_checks.no_load_balancer(kind, props, allowed=allow_load_balancer(config)),
    config_schema=PolicyConfigSchema(
        properties={
            ALLOW_LOAD_BALANCER: {
                "type": "boolean",
                "description": "Accept LoadBalancer Services (default: the stack's "
                "deployment.network.allow_load_balancer; false when it is not available).",
            }
        }
    ),
)

RECOMMENDED_LABELS = _resource_policy(
    "recommended-labels",
    "Every Kubernetes object, and the Pods it runs, carries the app.kubernetes.io/name, instance, "
    "component, part-of and managed-by labels.",
    lambda kind, props, _config: resource_checks.recommended_labels(kind, props),
)

CLIENT_DATA_READ_ONLY = _resource_policy(
    "client-data-read-only",
    "Client Pods mount every PersistentVolumeClaim (their data set) read-only, in the volume and each mount.",
    lambda kind, props, _config: resource_checks.client_data_read_only(kind, props),
    remediation_steps="Set persistentVolumeClaim.readOnly and the volumeMount's readOnly to true.",
)


def _stack_policy(
    name: str, description: str, check: Callable[[list[Declared]], list[Finding]]
) -> StackValidationPolicy:
    return StackValidationPolicy(name, description, _stack_validation(check), ENFORCEMENT)


NAMESPACE_DEFAULT_DENY = _stack_policy(
    "namespace-default-deny",
    "Every namespace the stack declares or runs Pods in has a default-deny NetworkPolicy "
    "(all Pods, Ingress and Egress, no rules).",
    stack_checks.namespace_default_deny,
)

SERVER_CHECKPOINT_VOLUME = _stack_policy(
    "server-checkpoint-volume",
    "The federation server Pod mounts a writable persistent volume, from a claim the stack "
    "declares, for its checkpoints.",
    stack_checks.server_checkpoint_volume,
)

DISRUPTION_BUDGETS_ALLOW_EVICTION = _stack_policy(
    "disruption-budgets-allow-eviction",
    "No PodDisruptionBudget forbids every eviction of the workload it selects (minAvailable "
    "as high as its replicas, or maxUnavailable 0): node drains would never finish.",
    stack_checks.disruption_budgets_allow_eviction,
)

RESOURCE_POLICIES: list[ResourceValidationPolicy] = [
    CONTAINER_RESOURCES,
    POD_SECURITY_RESTRICTED,
    IMAGES_PINNED,
    NO_LOAD_BALANCER,
    RECOMMENDED_LABELS,
    CLIENT_DATA_READ_ONLY,
]
STACK_POLICIES: list[StackValidationPolicy] = [
    NAMESPACE_DEFAULT_DENY,
    SERVER_CHECKPOINT_VOLUME,
    DISRUPTION_BUDGETS_ALLOW_EVICTION,
]
POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [*RESOURCE_POLICIES, *STACK_POLICIES]
