"""Domain logic above storage: alerts, coalesced events, notifications, permissions,
push tokens and job parameters."""
