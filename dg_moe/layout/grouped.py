"""Constants of the grouped (MoE) layouts."""

MK_ALIGNMENT_FOR_CONTIGUOUS_LAYOUT = 128


def get_mk_alignment_for_contiguous_layout() -> int:
    """Rows (M-grouped) or K elements (K-grouped) each group's segment is padded to: one BLOCK_M/BLOCK_K."""
    return MK_ALIGNMENT_FOR_CONTIGUOUS_LAYOUT
