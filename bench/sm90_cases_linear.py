"""sm90_report CASES for the fused-epilogue GEMMs at DINOv2-B's production shapes (bf16).

    python ../shared/tools/sm90_report.py bench/sm90_cases_linear.py --fail-on-spill

M = 64 images x 1370 tokens; weights in nn.Linear's (N, K) layout; bias and LayerScale given, as
the backbone calls them. The launcher is called directly: the ops send CPU tensors to the references.
"""
import torch

from sigma_fast.kernels.linear_epilogue import EPILOGUE_GELU, EPILOGUE_RESIDUAL, launch_linear_epilogue

ROWS, WIDTH, HIDDEN = 64 * 1370, 768, 3072


def _case(in_features, out_features, epilogue):
    def run():
        empty = lambda *shape: torch.empty(*shape, dtype=torch.bfloat16)  # noqa: E731
        residual = empty(ROWS, out_features) if epilogue == EPILOGUE_RESIDUAL else None
        gamma = empty(out_features) if epilogue == EPILOGUE_RESIDUAL else None
        launch_linear_epilogue(empty(ROWS, in_features), empty(out_features, in_features), empty(out_features),
                               gamma, residual, epilogue)
    return run


CASES = {
    "fc1_gelu_768x3072": _case(WIDTH, HIDDEN, EPILOGUE_GELU),
    "fc2_residual_3072x768": _case(HIDDEN, WIDTH, EPILOGUE_RESIDUAL),
    "proj_residual_768x768": _case(WIDTH, WIDTH, EPILOGUE_RESIDUAL),
}
