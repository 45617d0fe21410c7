"""``security``: TLS, mutual TLS, the bearer token and, cross-silo, the silos the server accepts."""

from __future__ import annotations

from pydantic import Field, model_validator

from services.common.config.base import Strict


class SiloIdentity(Strict):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
                      description="The silo's name (a DNS label), as in the stack's silos list.")
    cert_sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                             description="SHA-256 of the silo's client certificate (DER), lowercase hex.")


class SecuritySettings(Strict):
    tls: bool = Field(True, description="TLS on the client -> server link. false is for local runs only.")
    mutual_tls: bool = Field(False, description="Clients present certificates too.")
    ca_file: str = "/etc/tff-k8s/tls/ca.crt"
    cert_file: str = "/etc/tff-k8s/tls/tls.crt"
    key_file: str = "/etc/tff-k8s/tls/tls.key"
    token_file: str | None = Field(
        "/etc/tff-k8s/auth/token", description="Bearer token clients present; null disables auth."
    )
    silos: tuple[SiloIdentity, ...] = Field(
        (), strict=False,  # a YAML list
        description="Cross-silo: the silos whose client certificates the server accepts (mutual TLS), each "
        "by its certificate's SHA-256; empty: any client certificate the CA signed.",
    )

    @model_validator(mode="after")
    def _mtls_needs_tls(self) -> SecuritySettings:
        if self.mutual_tls and not self.tls:
            raise ValueError("mutual_tls needs tls: set security.tls to true or security.mutual_tls to false")
        if self.silos and not self.mutual_tls:
            raise ValueError("security.silos identifies silos by their client certificates: set security.mutual_tls "
                             "to true (and security.tls) or leave security.silos empty")
        for field in ("name", "cert_sha256"):
            seen = [getattr(silo, field) for silo in self.silos]
            dupes = sorted({v for v in seen if seen.count(v) > 1})
            if dupes:
                raise ValueError(f"security.silos: {field} {', '.join(dupes)} appears more than once: each silo has its "
                                 "own name and its own certificate")
        return self


