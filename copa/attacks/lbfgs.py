"""L-BFGS run independently on B instances at once: ``torch.optim.LBFGS`` (no line search), vectorised.

DLG and iDLG optimise with ``torch.optim.LBFGS`` (mit-han-lab/dlg ``main.py``). Summing B instances'
losses into one L-BFGS would mix them: its curvature pairs, step sizes and stopping tests are
global. :class:`BatchedLBFGS` keeps every one of them per instance — history ring buffer, ``ρ``,
``H_diag``, direction, step size, the counters and the five stopping tests of
``torch.optim.LBFGS.step`` — and evaluates the B instances in one vectorised closure call, so instance
``b`` follows the iterates ``torch.optim.LBFGS`` would give it alone (up to floating-point rounding of
the vectorised reductions; tests: tests/test_batched.py). One instance (B = 1) runs
``torch.optim.LBFGS`` itself.

The algorithm is PyTorch's (torch/optim/lbfgs.py, ``line_search_fn=None``): the two-loop recursion
over the last ``history_size`` pairs ``(s, y)`` with ``yᵀs > 1e-10``, the first step
``min(1, 1/‖g‖₁)·lr``, then ``lr``; per ``step()`` at most ``max_iter`` iterations and
``max_eval`` (default ``max_iter·5/4``) closure evaluations, stopping early when
``max|g| ≤ tolerance_grad``, ``gᵀd > −tolerance_change``, ``max|t·d| ≤ tolerance_change`` or
``|f − f_prev| < tolerance_change``. Instances that stop early in a step are left untouched
(bit for bit) while the others continue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class BatchedLBFGS:
    """Per-instance L-BFGS over leaf tensors whose first dimension indexes B independent instances.

    ``step(closure, active)`` runs one ``torch.optim.LBFGS.step`` for every instance in ``active``
    (a boolean ``(B,)`` mask) and returns the losses of the step's first evaluation. The closure is
    ``closure(count) -> losses``: it sets the variables' ``.grad`` to the gradient of
    ``losses.sum()`` (instances are independent, so that is each instance's own gradient) and returns
    the detached ``(B,)`` losses; ``count`` is the ``(B,)`` mask of the instances for which the
    sequential optimiser would have made this evaluation (for evaluation counts and best-iterate
    bookkeeping; the others' values are discarded).
    """

    def __init__(self, variables: Sequence[Tensor], lr: float = 1.0, max_iter: int = 20, max_eval: int | None = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100):
        self.variables = list(variables)
        self.instances = self.variables[0].shape[0]
        if any(v.shape[0] != self.instances for v in self.variables):
            raise ValueError("every variable needs the same leading instance dimension")
        self.lr, self.max_iter = lr, max_iter
        self.max_eval = max_eval if max_eval is not None else max_iter * 5 // 4
        self.tolerance_grad, self.tolerance_change = tolerance_grad, tolerance_change
        self.history_size = history_size
        # one instance: torch.optim.LBFGS itself — the algorithm this class follows, without the per-instance
        # masks and gathers that cost 2-3x per evaluation at B = 1 (benchmarks/throughput.py, reference column)
        self._single = None
        if self.instances == 1:
            self._single = torch.optim.LBFGS(self.variables, lr=lr, max_iter=max_iter, max_eval=self.max_eval,
                                             tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                                             history_size=history_size, line_search_fn=None)
            return
        first = self.variables[0]
        size = sum(v[0].numel() for v in self.variables)
        B, H, like = self.instances, history_size, dict(dtype=first.dtype, device=first.device)
        self.n_iter = torch.zeros(B, dtype=torch.long, device=first.device)  # state['n_iter'] per instance
        self.direction = torch.zeros(B, size, **like)
        self.step_size = torch.zeros(B, **like)
        self.old_dirs = torch.zeros(B, H, size, **like)  # y pairs, ring buffer per instance
        self.old_stps = torch.zeros(B, H, size, **like)  # s pairs
        self.ro = torch.zeros(B, H, **like)
        self.num_old = torch.zeros(B, dtype=torch.long, device=first.device)
        self.head = torch.zeros(B, dtype=torch.long, device=first.device)  # next slot to write
        self.h_diag = torch.ones(B, **like)
        self.prev_flat_grad = torch.zeros(B, size, **like)
        self.prev_loss = torch.zeros(B, dtype=torch.float64, device=first.device)

    # -- flat views ----------------------------------------------------------------------------------

    def _flat_grad(self) -> Tensor:
        return torch.cat([(v.grad if v.grad is not None else torch.zeros_like(v)).reshape(self.instances, -1)
                          for v in self.variables], dim=1)

    @torch.no_grad()
    def _add_step(self, mask: Tensor, step: Tensor) -> None:
        offset = 0
        for v in self.variables:
            n = v[0].numel()
            moved = v + step[:, offset:offset + n].reshape(v.shape)
            v.copy_(torch.where(mask.reshape(-1, *[1] * (v.dim() - 1)), moved, v))
            offset += n

    # -- one step ------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[Tensor], Tensor], active: Tensor) -> Tensor:
        if self._single is not None:
            active = active.to(self.variables[0].device)
            if not bool(active.all()):  # the one instance is inactive: evaluate, never move (as below)
                with torch.enable_grad():
                    return closure(active)
            return self._single.step(lambda: closure(active))
        active = active.to(self.n_iter.device)
        with torch.enable_grad():
            orig_loss = closure(active)
        loss = orig_loss.to(torch.float64)
        flat_grad = self._flat_grad()
        current_evals = 1
        opt_cond = flat_grad.abs().amax(dim=1) <= self.tolerance_grad
        running = active & ~opt_cond
        rows = torch.arange(self.instances, device=active.device)
        n_iter = 0
        while bool(running.any()):
            n_iter += 1
            self.n_iter += running.long()
            first = running & (self.n_iter == 1)
            later = running & ~first

            if bool(first.any()):
                self.direction = torch.where(first[:, None], -flat_grad, self.direction)
                self.num_old = torch.where(first, 0, self.num_old)
                self.head = torch.where(first, 0, self.head)
                self.h_diag = torch.where(first, 1.0, self.h_diag)
            if bool(later.any()):
                y = flat_grad - self.prev_flat_grad
                s = self.direction * self.step_size[:, None]
                ys = (y * s).sum(dim=1)
                update = later & (ys > 1e-10)
                if bool(update.any()):
                    idx = torch.nonzero(update).flatten()
                    slot = self.head[idx]
                    self.old_dirs[idx, slot] = y[idx]
                    self.old_stps[idx, slot] = s[idx]
                    self.ro[idx, slot] = 1.0 / ys[idx]
                    self.head = torch.where(update, (self.head + 1) % self.history_size, self.head)
                    self.num_old = torch.where(update, (self.num_old + 1).clamp_max(self.history_size), self.num_old)
                    self.h_diag = torch.where(update, ys / (y * y).sum(dim=1), self.h_diag)
                self.direction = torch.where(later[:, None], self._two_loop(flat_grad, later, rows), self.direction)

            self.prev_flat_grad = torch.where(running[:, None], flat_grad, self.prev_flat_grad)
            self.prev_loss = torch.where(running, loss, self.prev_loss)
            inverse_l1 = 1.0 / flat_grad.abs().sum(dim=1)
            first_size = torch.where(inverse_l1 < 1.0, inverse_l1, torch.ones_like(inverse_l1)) * self.lr
            self.step_size = torch.where(first, first_size, torch.where(running, self.lr, self.step_size))

            gtd = (flat_grad * self.direction).sum(dim=1)
            running = running & ~(gtd > -self.tolerance_change)  # not a descent direction: stop before moving
            if not bool(running.any()):
                break
            self._add_step(running, self.direction * self.step_size[:, None])
            if n_iter != self.max_iter:
                with torch.enable_grad():
                    new_loss = closure(running)
                new_grad = self._flat_grad()
                loss = torch.where(running, new_loss.to(torch.float64), loss)
                flat_grad = torch.where(running[:, None], new_grad, flat_grad)
                opt_cond = flat_grad.abs().amax(dim=1) <= self.tolerance_grad
                current_evals += 1
            if n_iter == self.max_iter or current_evals >= self.max_eval:
                break
            small_step = (self.direction * self.step_size[:, None]).abs().amax(dim=1) <= self.tolerance_change
            flat = (loss - self.prev_loss).abs() < self.tolerance_change
            running = running & ~opt_cond & ~small_step & ~flat
        return orig_loss

    def _two_loop(self, flat_grad: Tensor, mask: Tensor, rows: Tensor) -> Tensor:
        """L-BFGS two-loop recursion per instance over its own history (newest first, then oldest first).

        The pairs are gathered once, newest first (``B × depth × n``), so each of the recursion's steps is
        a few element-wise operations on views (gathering pair by pair cost 0.5 ms per pair at n = 3072)."""
        depth = int(self.num_old[mask].max()) if bool(mask.any()) else 0
        q = flat_grad.neg()
        if depth == 0:
            return q * self.h_diag[:, None]
        order = torch.arange(depth, device=rows.device)
        slots = (self.head[:, None] - 1 - order[None, :]) % self.history_size  # B × depth, k-th newest pair
        valid = mask[:, None] & (order[None, :] < self.num_old[:, None])
        stps, dirs = self.old_stps[rows[:, None], slots], self.old_dirs[rows[:, None], slots]
        ros = torch.where(valid, self.ro[rows[:, None], slots], torch.zeros_like(self.ro[:, :depth]))
        alphas = []
        for k in range(depth):  # newest first; an invalid pair has ro 0, so alpha 0 and q unchanged
            alpha = (stps[:, k] * q).sum(dim=1) * ros[:, k]
            q = torch.where(valid[:, k, None], q - alpha[:, None] * dirs[:, k], q)
            alphas.append(alpha)
        r = q * self.h_diag[:, None]
        for k in reversed(range(depth)):  # oldest first
            beta = (dirs[:, k] * r).sum(dim=1) * ros[:, k]
            r = torch.where(valid[:, k, None], r + (alphas[k] - beta)[:, None] * stps[:, k], r)
        return r
