"""Stage II, EMA self-training: an exponential-moving-average teacher of the student's head
pseudo-labels unlabelled editing pairs; each image supervises the student as much as the teacher
is confident about it."""
import torch

from sigma_fast.model import SigmaModel, TextEncoder

WARMUP_OFFSET = 10  # decay_t = min(decay, (1 + t) / (10 + t)): the teacher follows closely at first


def make_teacher(student: SigmaModel) -> SigmaModel:
    """A copy of the student's head sharing its frozen backbone and text tower (no second copy of
    the encoders in memory), frozen and in eval mode."""
    text = student.text_encoder
    teacher = SigmaModel(student.config, student.backbone,
                         TextEncoder(text.model, text.tokenizer, student.config.dim, text.max_tokens))
    teacher.to(next(student.parameters()).device)
    teacher.load_head_state_dict(student.head_state_dict())
    return teacher.requires_grad_(False).eval()


class EmaTeacher:
    def __init__(self, student: SigmaModel, decay, warmup=True):
        self.model = make_teacher(student)
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.parameter_names = {name for name, p in student.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def reset(self, student: SigmaModel):
        """The teacher becomes a copy of the student's head, with the decay warm-up restarted."""
        self.model.load_head_state_dict(student.head_state_dict())
        self.updates = 0

    def current_decay(self):
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (WARMUP_OFFSET + self.updates))

    @torch.no_grad()
    def update(self, student: SigmaModel):
        """teacher <- d * teacher + (1 - d) * student for the head's parameters; buffers (the
        calibration statistics) are copied."""
        decay = self.current_decay()
        teacher_state = self.model.head_state_dict()
        for name, value in student.head_state_dict().items():
            if name in self.parameter_names:
                teacher_state[name].lerp_(value, 1.0 - decay)
            else:
                teacher_state[name].copy_(value)
        # The calibration flag is a Python attribute: its state-dict tensor is a copy.
        self.model.difference.calibrated = student.difference.calibrated
        self.updates += 1

    @torch.no_grad()
    def pseudo_label(self, x_orig, x_edit, instructions, edits, confidence, prior=None):
        """Clean pairs (B, 3, S, S) and their priors (B, g, g; None: flat, the student's prior) ->
        (label, weight), each (B, S, S): label = p > 0.5 on every
        pixel; weight = the share of the image's pixels where the teacher is confident
        (max(p, 1 - p) >= confidence), the same on all of its pixels (DAFormer's quality estimate).

        Gating pixel by pixel instead keeps few background pixels of perturbed pairs, where the
        teacher is unsure, next to its confident edits: the student then learns to mark more and
        more (the development runs in docs/results.md's reading). Whole images keep both classes,
        and an image counts as much as the teacher is sure of it."""
        tokens, mask = self.model.encode_text(instructions, edits)
        prob = torch.sigmoid(self.model(x_orig, x_edit, tokens, mask, prior)[:, 0].float())
        label = (prob > 0.5).float()
        confident = (torch.maximum(prob, 1 - prob) >= confidence).float()
        return label, confident.mean((1, 2), keepdim=True).expand_as(label).contiguous()

    def state_dict(self):
        return {"updates": self.updates, "head": self.model.head_state_dict()}

    def load_state_dict(self, state):
        self.updates = int(state["updates"])
        self.model.load_head_state_dict(state["head"])
