"""The knobs a test turns at run time, apart from the state they act on: `Cloud` holds a
`Knobs`; faults.py and the services read it. Nothing here imports the state."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

from .faults import Faults, Quirks


@dataclass
class Knobs:
    """Behaviour a test can turn at run time; everything is off by default (see faults.py).

    `latency` maps a service (faults.LATENCY_SERVICES: arm, keyvault, entra, graph, imds, himds,
    aka.ms, ssh_handshake) to seconds added to each request or SSH login. `throttle` turns on ARM's token
    buckets (per caller and subscription) of the given capacities and refill rates per second.
    Mutate `faults` and `quirks` in place: the services hold on to these objects.
    """

    propagation_delay: float = 0.0
    # Seconds a long-running ARM operation (deployments, network and compute PUTs) stays in
    # progress before it ends; pollers are told to poll again after as long (arm/lro.py).
    lro_delay: float = 0.05
    latency: dict[str, float] = field(default_factory=dict)  # service name -> seconds
    throttle: bool = False
    arm_read_bucket: int = 250
    arm_read_refill: float = 25.0  # UNCONFIRMED rate (“Understand how Azure Resource Manager throttles requests”)
    arm_write_bucket: int = 200
    arm_write_refill: float = 10.0
    faults: Faults = field(default_factory=Faults)
    quirks: Quirks = field(default_factory=Quirks)

    def reset(self) -> None:
        """Every knob back to its default, keeping the `faults` and `quirks` objects."""
        for f in fields(Knobs):
            if f.name not in ("faults", "quirks"):
                setattr(self, f.name, f.default if f.default_factory is MISSING
                        else f.default_factory())
        self.faults.clear()
        self.quirks.clear()
