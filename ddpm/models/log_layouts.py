"""The research log's UNet layouts, written once (scripts, benchmarks and tests use them).

Entry #9 gives its lists exactly; #5 introduced its channels. The log does not
give the channels of #1-#4 nor the residual blocks per layer: `SMALL_CHANNELS`
and `LOG_RES_BLOCKS` are this project's assumptions (the DDPM paper uses 2).
"""

LOG9_LISTS = dict(
    down_attn=[False, False, False, True],
    down_channel_indices=[[0, 0], [0, 1], [1, 2], [2, 3]],   # [in, out] into channels
    mid_attn=[False, True, False],
    mid_channel_indices=[[3, 4], [4, 4], [4, 3]],
    up_attn=[True, False, False],
    up_channel_indices=[[3, 2], [2, 1], [1, 0]],
)
WIDE_CHANNELS = [64, 128, 256, 512, 1024]     # log #5 onwards
SMALL_CHANNELS = [32, 64, 128, 256, 512]      # assumed for #1-#4
LOG_RES_BLOCKS = 2                            # assumed
LOG9 = dict(channels=WIDE_CHANNELS, **LOG9_LISTS)
