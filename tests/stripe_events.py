"""The Stripe-shaped factories live in ingest/stripe_samples.py (`roi demo` posts them too);
tests import them from here, as `se`."""

from ingest.stripe_samples import *  # noqa: F403
from ingest.stripe_samples import new_id, now  # noqa: F401  (named for readers and mypy)
