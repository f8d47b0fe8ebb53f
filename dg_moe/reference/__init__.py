"""dg_moe."""
