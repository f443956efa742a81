"""Training losses: BCE + Dice on masks, confidence-masked BCE on pseudo-labels, and the
edit-noise disentanglement loss on the difference branch's tokens."""
import torch
import torch.nn.functional as F

DICE_SMOOTH = 1.0
EDITED_COVERAGE = 0.5  # a token is "edited" when at least half of its patch is in the edit mask


def bce_dice(logits, target, bce_weight=1.0, dice_weight=1.0):
    """logits (B, 1, S, S), target (B, S, S) in {0, 1} -> (loss, {"bce", "dice"}).

    BCE is the mean over all pixels. Dice, 1 - (2|P.T| + 1) / (|P| + |T| + 1) on the soft
    prediction, is taken on the images with a non-empty target only (on an empty one it measures
    nothing BCE does not, with vanishing gradients) and summed over them, divided by B. Both are
    sums of per-image terms over B, so the mean over DDP ranks with equal batches is the
    single-process loss."""
    logits = logits[:, 0].float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    intersection = (prob * target).sum((1, 2))
    dice = 1 - (2 * intersection + DICE_SMOOTH) / (prob.sum((1, 2)) + target.sum((1, 2)) + DICE_SMOOTH)
    dice = (dice * (target.sum((1, 2)) > 0)).sum() / target.shape[0]
    return bce_weight * bce + dice_weight * dice, {"bce": bce.detach(), "dice": dice.detach()}


def masked_bce(logits, target, weight):
    """BCE over the pixels where `weight` > 0 (the confident pseudo-labels), weighted, averaged.
    logits (B, 1, S, S); target, weight (B, S, S). Zero (still in the graph) when nothing is confident."""
    losses = F.binary_cross_entropy_with_logits(logits[:, 0].float(), target, reduction="none")
    return (losses * weight).sum() / weight.sum().clamp_min(1.0)


def token_coverage(mask, grid):
    """Edit mask (B, S, S) -> fraction of each of the g x g patches inside it, (B, g*g)."""
    return F.adaptive_avg_pool2d(mask[:, None].float(), grid).flatten(1)


def edit_prototype(tokens, coverage):
    """The mean difference-branch token over the edited tokens (coverage >= 0.5) of the batch, (D,),
    and the noise-only tokens (coverage == 0), (M, D); None when either set is empty."""
    tokens = tokens.float().flatten(0, 1)  # (B*N, D)
    coverage = coverage.flatten()
    edited, noise = coverage >= EDITED_COVERAGE, coverage == 0
    if not edited.any() or not noise.any():
        return None
    return tokens[edited].mean(0), tokens[noise]


def disentangle_loss(tokens, coverage, margin):
    """Edit-noise disentanglement loss.

    With h_{b,t} the difference branch's output for token t of pair b (`tokens`, (B, N, D)) and
    c_{b,t} the share of that token's patch inside the edit mask (`coverage`, (B, N)):

        E = {(b, t) : c_{b,t} >= 1/2}        edited tokens
        Z = {(b, t) : c_{b,t} = 0}           noise-only tokens (nothing edited in the patch)
        e = mean_{E} h                       the batch's edit prototype
        L_dis = mean_{z in Z} max(0, margin - (1 - cos(h_z, e)))

    i.e. every noise-only token, not only their mean, must be at least `margin` in cosine distance
    from the edit prototype (margin in (0, 2]; 1 = orthogonal). A hinge on pooled responses is met
    by the mean of many unchanged tokens while the few tokens that the editor's noise moves, the
    ones that become false positives, still look like edits. Tokens with 0 < c < 1/2 are ignored.
    Returns (loss, separation = mean_Z (1 - cos(h_z, e))); a batch without both kinds of tokens
    gives a zero loss that stays in the graph (for DDP).
    """
    split = edit_prototype(tokens, coverage)
    if split is None:
        zero = tokens.float().sum() * 0.0
        return zero, None
    prototype, noise = split
    distance = 1 - F.cosine_similarity(noise, prototype[None], dim=1, eps=1e-8)
    return torch.relu(margin - distance).mean(), distance.mean().detach()
