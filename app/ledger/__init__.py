"""The revenue ledger: Stripe events -> facts -> ledger entries (accounting.md, "Revenue")."""
