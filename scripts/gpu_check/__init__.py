"""The GPU check of issues 14 and 22, in pieces (scripts/gpu_check.sh is the one entry point).

    plan     what one check runs: sizes, the parts in the order of their value, their caps
    results  the results folder ($OUT on the device): rows appended as each part ends
    table    the markdown table made from those rows
    shards   the generate part's finished shards (what a cut run kept)
    parts    the parts themselves (torch, Lightning, the stages)
    runner   each part in its own capped process, within the run's time budget
    pack     what travels to the device: .faces/ and the wheels its image lacks

Only `parts` imports Lightning and the stages (the check process imports torch only to
count GPUs); the others stay light, so recording a part's end or its time-out costs
next to nothing.
"""
