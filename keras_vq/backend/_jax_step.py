"""JAX step: a pure function of the model state, differentiated with ``value_and_grad``.

The forward pass runs in a ``StatelessScope`` that maps every variable to its value in the
step's state and collects ``add_loss`` terms (``collect_losses=True``: without it the
VectorQuantizer's loss would silently vanish). Values the forward pass ``assign``s (EMA
codebooks, RNG seeds, trackers) are read back from the scope and returned as the new state.
"""

import jax
from keras import StatelessScope

from keras_vq.backend._step_base import StepMixinBase
from keras_vq.backend.checks import validating_batches
from keras_vq.backend.ops import trainable_assignments_kept


def _values_after(scope, variables, before):
    return [
        value if (value := scope.get_current_value(v)) is not None else old
        for v, old in zip(variables, before)
    ]


class TrainStepMixin(StepMixinBase):
    def _wrap_step_function(self, fn):
        # A jitted step cannot raise without losing its donated state: check batches first.
        return validating_batches(
            super()._wrap_step_function(fn), self.validate_batch, self._restore_state
        )

    def _restore_state(self, state):
        """Write a step's input state (train, test or predict layout) back to the variables."""
        groups = [self.trainable_variables, self.non_trainable_variables]
        if len(state) == 4:
            groups += [self.optimizer.variables, self.metrics_variables]
        elif len(state) == 3:
            groups.append(self.metrics_variables)
        try:
            for variables, values in zip(groups, state):
                for variable, value in zip(variables, values):
                    variable.assign(value)
        except RuntimeError:  # buffers donated to an earlier step of a multi-step execution
            pass

    def _stateless_step_loss(
        self, trainable, non_trainable, metrics_vars, optimizer_vars, x, y, sample_weight, training
    ):
        mapping = list(zip(self.trainable_variables, trainable))
        mapping += zip(self.non_trainable_variables, non_trainable)
        mapping += zip(self.metrics_variables, metrics_vars)
        if optimizer_vars is not None:
            mapping += zip(self.optimizer.variables, optimizer_vars)
        # Trainable assignments (restarted codes) are read back below: layers may make them.
        with (
            StatelessScope(state_mapping=mapping, collect_losses=True) as scope,
            trainable_assignments_kept(),
        ):
            loss, y_pred = self.step_loss(x, y, sample_weight, training=training)
            scaled = self.optimizer.scale_loss(loss) if optimizer_vars is not None else loss
        updated = (
            _values_after(scope, self.trainable_variables, trainable),
            _values_after(scope, self.non_trainable_variables, non_trainable),
            _values_after(scope, self.metrics_variables, metrics_vars),
        )
        return scaled, (loss, y_pred, updated)

    def _stateless_finish(self, metrics_vars, loss, x, y, y_pred, sample_weight):
        mapping = list(zip(self.metrics_variables, metrics_vars))
        with StatelessScope(state_mapping=mapping) as scope:
            logs = self._finish_step(loss, x, y, y_pred, sample_weight)
        return logs, _values_after(scope, self.metrics_variables, metrics_vars)

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_vars, metrics_vars = state
        x, y, sample_weight = self._unpack(data)
        grad_fn = jax.value_and_grad(self._stateless_step_loss, has_aux=True)
        (_, (loss, y_pred, updated)), grads = grad_fn(
            trainable, non_trainable, metrics_vars, optimizer_vars, x, y, sample_weight, True
        )
        forward_trainable, new_non_trainable, metrics_vars = updated
        finite = self._is_finite(loss)
        new_trainable, new_optimizer_vars = self._stateless_update(
            loss, grads, trainable, optimizer_vars
        )
        optimizer_vars = new_optimizer_vars
        # A non-finite batch leaves the layers' state (EMA statistics, BN moments) as it was.
        non_trainable = [
            jax.numpy.where(finite, new, old) for new, old in zip(new_non_trainable, non_trainable)
        ]
        # A trainable variable assigned in the forward pass (a restarted dead code) keeps that
        # assignment with the optimizer's step on top, as on TF and torch.
        new_trainable = [
            new if after is before else after + (new - before)
            for new, after, before in zip(new_trainable, forward_trainable, trainable)
        ]
        self._fold_codebook_offsets(new_trainable, non_trainable)
        logs, metrics_vars = self._stateless_finish(
            metrics_vars, loss, x, y, y_pred, sample_weight
        )
        return logs, (new_trainable, non_trainable, optimizer_vars, metrics_vars)

    def _stateless_update(self, loss, grads, trainable, optimizer_vars):
        """The optimizer's update, skipped when :meth:`_update_is_safe` says so.

        Returns:
            ``(trainable values, optimizer variable values)`` after the step.
        """
        return jax.lax.cond(
            self._update_is_safe(loss, grads),
            lambda: self.optimizer.stateless_apply(optimizer_vars, grads, trainable),
            lambda: (list(trainable), list(optimizer_vars)),
        )

    def _fold_codebook_offsets(self, trainable, non_trainable) -> None:
        """Fold quantizers' pending restarts (``codebook_offset``) into their ``codebook``.

        In place on the state lists; the models' state then matches TF and torch, where the
        restart is assigned to the codebook directly.
        """
        trainable_index = {v.path: i for i, v in enumerate(self.trainable_variables)}
        for j, variable in enumerate(self.non_trainable_variables):
            if not variable.path.endswith("/codebook_offset"):
                continue
            i = trainable_index.get(variable.path[: -len("_offset")])
            if i is not None:
                trainable[i] = trainable[i] + non_trainable[j]
                non_trainable[j] = jax.numpy.zeros_like(non_trainable[j])

    def test_step(self, state, data):
        trainable, non_trainable, metrics_vars = state
        x, y, sample_weight = self._unpack(data)
        _, (loss, y_pred, updated) = self._stateless_step_loss(
            trainable, non_trainable, metrics_vars, None, x, y, sample_weight, False
        )
        _, non_trainable, metrics_vars = updated
        logs, metrics_vars = self._stateless_finish(
            metrics_vars, loss, x, y, y_pred, sample_weight
        )
        return logs, (trainable, non_trainable, metrics_vars)
