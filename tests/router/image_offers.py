"""Offers and priors shaped like the bundled image generator (random-image) on three tiers.

The phone runs up to 512 px without the refiner, the edge up to 1024, the cloud 1024 and 2048
with the refiner (the capability pyramid of tierflow.model.demo.image). Latencies are made-up
priors in seconds, chosen so that each tier is the fastest somewhere.
"""

from __future__ import annotations

from tierflow.router.matrix import TaskResourceMatrix
from tierflow.router.sla import Offer
from tierflow.types.tiers import Tier

DEVICE_256 = Offer(Tier.DEVICE, "base", 256)
DEVICE_512 = Offer(Tier.DEVICE, "base", 512)
EDGE_512 = Offer(Tier.EDGE, "base", 512)
EDGE_1024 = Offer(Tier.EDGE, "base", 1024)
CLOUD_1024 = Offer(Tier.CLOUD, "refined", 1024)
CLOUD_2048 = Offer(Tier.CLOUD, "refined", 2048)

IMAGE_OFFERS = (DEVICE_256, DEVICE_512, EDGE_512, EDGE_1024, CLOUD_1024, CLOUD_2048)

IMAGE_PRIORS = {
    "image_256": {"device": 0.4},
    "image_512": {"device": 1.5, "edge": 0.5},
    "image_1024": {"edge": 1.2, "cloud": 0.8},
    "image_2048": {"cloud": 2.0},
}


def image_matrix() -> TaskResourceMatrix:
    return TaskResourceMatrix(IMAGE_PRIORS)
