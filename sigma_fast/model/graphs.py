"""`SigmaModel.forward` captured as CUDA graphs, one per input shape, safe for concurrent callers.

A captured graph reads fixed input buffers and writes a fixed output buffer, so two calls in flight
on one graph would overwrite each other's inputs and outputs. `GraphedForward` therefore runs one
call at a time and returns a copy of the output; `GraphCache` hands each call a graph of its own.
"""
import threading

import torch

# Capture synchronizes the device and empties the allocator's cache; two at once would also share
# torch's default capture stream. One capture at a time in the process.
_CAPTURE_LOCK = threading.Lock()


class GraphedForward:
    """`model.forward(x_orig, x_edit, text_tokens, text_mask, prior)` for one (batch, image size,
    text length, dtype), replayed as a CUDA graph. Inference only.

    Captured on the first call, whose shapes fix the graph: the model runs `warmup` times on a side
    stream (kernel compilation, autotuning, cuBLAS workspaces stay out of the graph), then once
    under capture into the graph's own memory pool. Each call copies its inputs into the static
    buffers, replays on the caller's current stream and returns a clone of the logits, valid for
    as long as the caller keeps it. Calls are serialized by a lock, and a call waits (on the GPU)
    for the previous call's replay even when that one ran on another stream.
    """

    def __init__(self, model, batch, device, dtype, warmup=2):
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a GPU, but torch sees none")
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
        self.model = model
        self.batch = batch
        self.device = device
        self.dtype = dtype
        self.warmup = warmup
        self.graph = None
        self._inputs = None  # static (x_orig, x_edit, text_tokens, text_mask, prior)
        self._output = None  # static logits, written by each replay
        self._done = None  # event after the last call's replay and copy, on that call's stream
        self._lock = threading.Lock()

    def __call__(self, x_orig, x_edit, text_tokens, text_mask, prior=None):
        # x_orig, x_edit (B, 3, S, S); text_tokens (B, T, D); text_mask (B, T) bool;
        # prior (B, g, g) or None (flat) -> logits (B, 1, S, S), a fresh tensor
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            if self._done is not None:
                stream.wait_event(self._done)
            if self._inputs is None:
                self._inputs = self._allocate(x_orig, text_tokens)
            self._fill(x_orig, x_edit, text_tokens, text_mask, prior)
            if self.graph is None:
                self._capture()
            self.graph.replay()
            logits = self._output.clone()
            self._done = torch.cuda.Event()
            self._done.record(stream)
            return logits

    def _allocate(self, x_orig, text_tokens):
        if x_orig.dim() != 4 or text_tokens.dim() != 3:
            raise ValueError(f"expected x_orig (B, 3, S, S) and text_tokens (B, T, D), got shapes "
                             f"{tuple(x_orig.shape)} and {tuple(text_tokens.shape)}")
        grid = self.model.grid
        images = (self.batch, *x_orig.shape[1:])
        tokens = (self.batch, *text_tokens.shape[1:])
        make = dict(device=self.device)
        return (torch.empty(images, dtype=self.dtype, **make), torch.empty(images, dtype=self.dtype, **make),
                torch.empty(tokens, dtype=self.dtype, **make), torch.empty(tokens[:2], dtype=torch.bool, **make),
                torch.empty(self.batch, grid, grid, dtype=torch.float32, **make))

    def _fill(self, *inputs):
        names = ("x_orig", "x_edit", "text_tokens", "text_mask", "prior")
        for name, static, value in zip(names, self._inputs, inputs):
            if value is None:  # only the prior may be None: the flat prior, as in the model
                static.fill_(1.0)
                continue
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
            if value.shape != static.shape:
                raise ValueError(f"{name}: this graph was captured for shape {tuple(static.shape)}, got "
                                 f"{tuple(value.shape)}")
            if value.device != self.device:
                raise ValueError(f"{name} must be on {self.device}, got {value.device}")
            static.copy_(value)

    def _capture(self):
        caller = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(caller)
        with _CAPTURE_LOCK:
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.model(*self._inputs)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads may keep running (and allocating) while this one captures
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                output = self.model(*self._inputs)
        caller.wait_stream(side)
        self.graph, self._output = graph, output


class GraphCache:
    """Callable like `model.forward`: one `GraphedForward` per input shape, up to `copies` of each.

    A call checks a graph out for itself and returns it when done, so concurrent callers never
    share a graph or its buffers; a caller that finds every copy busy waits for one. Replays are
    queued on the caller's stream, so a graph is held only while its work is being queued: one
    copy serves threads that share a stream; more copies let callers on separate streams overlap.
    """

    def __init__(self, model, device, dtype, copies=1):
        if copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}")
        self.model = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.copies = copies
        self._idle = {}  # input shapes -> graphs not in use
        self._made = {}  # input shapes -> graphs created
        self._changed = threading.Condition()

    def __call__(self, x_orig, x_edit, text_tokens, text_mask, prior=None):
        # the model's forward: (B, 3, S, S) x2, (B, T, D), (B, T), (B, g, g) or None -> (B, 1, S, S)
        key = (tuple(x_orig.shape), tuple(text_tokens.shape))
        graphed = self._checkout(key)
        try:
            return graphed(x_orig, x_edit, text_tokens, text_mask, prior)
        finally:
            self._checkin(key, graphed)

    def graphs(self):
        """Number of graphs created so far, over all shapes."""
        with self._changed:
            return sum(self._made.values())

    def _checkout(self, key):
        with self._changed:
            while True:
                idle = self._idle.setdefault(key, [])
                if idle:
                    return idle.pop()
                if self._made.get(key, 0) < self.copies:
                    graphed = GraphedForward(self.model, key[0][0], self.device, self.dtype)  # captured on first use
                    self._made[key] = self._made.get(key, 0) + 1
                    return graphed
                self._changed.wait()

    def _checkin(self, key, graphed):
        with self._changed:
            self._idle[key].append(graphed)
            self._changed.notify()
