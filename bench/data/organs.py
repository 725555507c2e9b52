"""Label ids and organ names shared by data, evaluation and reports."""

SYNAPSE_ORGANS: dict[int, str] = {
    1: "aorta",
    2: "gallbladder",
    3: "kidney_l",
    4: "kidney_r",
    5: "liver",
    6: "pancreas",
    7: "spleen",
    8: "stomach",
}
SYNAPSE_NUM_CLASSES = 9  # background + eight organs
