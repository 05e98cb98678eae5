"""The device's power model: what a request costs the battery.

Energy is counted on the device only (edge and cloud run on mains power):

    E = P_idle * latency                      # the device is awake for the whole request
      + (P_busy - P_idle) * T_device_compute  # extra while its cores run its stage
      + beta_tx * T_tx + alpha_tx * B_tx      # radio: sending B_tx bytes takes T_tx seconds
      + beta_rx * T_rx + alpha_rx * B_rx      # radio: receiving

``beta`` is the radio's extra power while it moves data and ``alpha`` its energy per
byte moved; both come from Huang et al., "A Close Examination of Performance and Power
Characteristics of 4G LTE Networks" (MobiSys 2012, table 4: power = alpha * throughput +
beta), converted from mW/Mbps to J/byte (x 8e-6). The radio tail (the seconds a cellular
radio stays in its high-power state after the last packet) is left out: it is shared by
every request in a busy session. The CPU figures are representative of a phone SoC
(a few big cores busy ~3 W, awake and waiting ~0.3 W); change them per device.

The battery level enters through :func:`effective_energy_weight`: the lower the
battery, the more a joule costs in the planner's score ``latency + w * E``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

MW_PER_MBPS_TO_J_PER_BYTE = 1e-3 * 8e-6  # (mW / Mbit/s) = mJ per Mbit -> J per byte


class RadioModel(BaseModel):
    """Extra power of the device's radio while it moves data, and energy per byte."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    tx_w: float = Field(ge=0.0, description="extra power while sending (beta)")
    rx_w: float = Field(ge=0.0, description="extra power while receiving (beta)")
    tx_j_per_byte: float = Field(ge=0.0, description="energy per byte sent (alpha_u)")
    rx_j_per_byte: float = Field(ge=0.0, description="energy per byte received (alpha_d)")


def _huang(name: str, alpha_u: float, alpha_d: float, beta_mw: float) -> RadioModel:
    return RadioModel(
        name=name,
        tx_w=beta_mw / 1000.0,
        rx_w=beta_mw / 1000.0,
        tx_j_per_byte=alpha_u * MW_PER_MBPS_TO_J_PER_BYTE,
        rx_j_per_byte=alpha_d * MW_PER_MBPS_TO_J_PER_BYTE,
    )


# Huang et al. 2012, table 4 (alpha_u, alpha_d in mW/Mbps; beta in mW).
RADIOS: dict[str, RadioModel] = {
    "lte": _huang("lte", 438.39, 51.97, 1288.04),
    "3g": _huang("3g", 868.98, 122.12, 817.88),
    "wifi": _huang("wifi", 283.17, 137.01, 132.86),
    "wired": RadioModel(name="wired", tx_w=0.0, rx_w=0.0, tx_j_per_byte=0.0, rx_j_per_byte=0.0),
}

# Which radio a named link profile (tierflow.transport.profiles) stands for. 2G has no
# figure in the study and uses 3G's; 5G NR uses LTE's (an assumption: NR modems draw
# at least as much).
PROFILE_RADIO = {"2g": "3g", "3g": "3g", "4g": "lte", "5g": "lte", "wifi": "wifi", "datacenter": "wired"}


def radio_for_profile(profile_name: str) -> RadioModel:
    """The radio behind a named link profile; unknown names get LTE (the most common)."""
    base = profile_name.split("[", 1)[0].strip().lower()
    return RADIOS[PROFILE_RADIO.get(base, "lte")]


class DevicePower(BaseModel):
    """The device's power figures (see the module docstring for the formula)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    busy_w: float = Field(default=3.0, ge=0.0, description="power while the CPU runs a stage")
    idle_w: float = Field(default=0.3, ge=0.0, description="power while awake and waiting")
    radio: RadioModel = RADIOS["lte"]

    @model_validator(mode="after")
    def _busy_above_idle(self) -> DevicePower:
        if self.busy_w < self.idle_w:
            raise ValueError("busy_w must be at least idle_w")
        return self

    def energy_j(
        self,
        latency_s: float,
        device_compute_s: float,
        *,
        sent_bytes: float = 0.0,
        send_s: float = 0.0,
        received_bytes: float = 0.0,
        receive_s: float = 0.0,
    ) -> float:
        """The device's joules for one request (the module docstring's formula)."""
        return (
            self.idle_w * latency_s
            + (self.busy_w - self.idle_w) * device_compute_s
            + self.radio.tx_w * send_s
            + self.radio.tx_j_per_byte * sent_bytes
            + self.radio.rx_w * receive_s
            + self.radio.rx_j_per_byte * received_bytes
        )


# Battery levels at which a joule starts to cost more, and how much more at the bottom.
BATTERY_COMFORT = 0.5
BATTERY_LOW = 0.2
LOW_BATTERY_FACTOR = 4.0
CRITICAL_BATTERY_FACTOR = 10.0


def battery_factor(battery: float | None) -> float:
    """How much dearer a joule is at this battery level (``None`` = on mains power or unknown).

    1 at or above 50 %, rising linearly to 4 at 20 %, and 10 below 20 %.
    """
    if battery is None or battery >= BATTERY_COMFORT:
        return 1.0
    if battery >= BATTERY_LOW:
        share = (BATTERY_COMFORT - battery) / (BATTERY_COMFORT - BATTERY_LOW)
        return 1.0 + (LOW_BATTERY_FACTOR - 1.0) * share
    return CRITICAL_BATTERY_FACTOR


def effective_energy_weight(weight: float, battery: float | None) -> float:
    """``w`` in ``score = latency + w * energy`` (seconds per joule) at this battery level."""
    return weight * battery_factor(battery)
