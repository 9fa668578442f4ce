"""Layer functions in the style of the vision course's ``layers.py``: each ``*_forward``
returns (out, cache), each ``*_backward`` takes (dout, cache). They are methods, so a bug
planted in one of them (see :func:`base.plant`) changes one model instance only."""

from __future__ import annotations

import numpy as np

from .base import Model


class Layers(Model):
    """Affine, ReLU, softmax loss, batch normalization, convolution, max pooling, dropout."""

    def affine_forward(self, x, w, b):
        out = x.reshape(x.shape[0], -1) @ w + b
        return out, (x, w)

    def affine_backward(self, dout, cache):
        x, w = cache
        dx = (dout @ w.T).reshape(x.shape)
        dw = x.reshape(x.shape[0], -1).T @ dout
        db = dout.sum(axis=0)
        return dx, dw, db

    def relu_forward(self, x):
        out = np.maximum(0, x)
        return out, out

    def relu_backward(self, dout, cache):
        out = cache
        return dout * (out > 0)

    def softmax_loss(self, scores, y):
        num_train = scores.shape[0]
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -log_probs[np.arange(num_train), y].mean()
        probs = np.exp(log_probs)
        onehot = np.eye(scores.shape[1], dtype=scores.dtype)[y]
        dscores = (probs - onehot) / num_train
        return loss, dscores

    def batchnorm_forward(self, x, gamma, beta, eps=1e-5):
        """Training mode: the batch's own mean and variance."""
        mean = x.mean(axis=0)
        std = np.sqrt(x.var(axis=0) + eps)
        xhat = (x - mean) / std
        return gamma * xhat + beta, (xhat, gamma, std)

    def batchnorm_backward(self, dout, cache):
        xhat, gamma, std = cache
        dbeta = dout.sum(axis=0)
        dgamma = (dout * xhat).sum(axis=0)
        dxhat = dout * gamma
        dx = (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) / std
        return dx, dgamma, dbeta

    def conv_forward_naive(self, x, w, b, stride, pad):
        """x (N, C, H, W), w (F, C, HH, WW): one output position at a time."""
        _, _, height, width = x.shape
        _, _, kernel_h, kernel_w = w.shape
        padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        out_h = 1 + (height + 2 * pad - kernel_h) // stride
        out_w = 1 + (width + 2 * pad - kernel_w) // stride
        out = np.zeros((x.shape[0], w.shape[0], out_h, out_w), dtype=x.dtype)
        for i in range(out_h):
            for j in range(out_w):
                rows = slice(i * stride, i * stride + kernel_h)
                columns = slice(j * stride, j * stride + kernel_w)
                window = padded[:, :, rows, columns]
                out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3])) + b
        return out, (x, w, stride, pad)

    def conv_backward_naive(self, dout, cache):
        x, w, stride, pad = cache
        _, _, kernel_h, kernel_w = w.shape
        padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        dpadded = np.zeros_like(padded)
        dw = np.zeros_like(w)
        for i in range(dout.shape[2]):
            for j in range(dout.shape[3]):
                rows = slice(i * stride, i * stride + kernel_h)
                columns = slice(j * stride, j * stride + kernel_w)
                dw += np.tensordot(dout[:, :, i, j], padded[:, :, rows, columns], axes=([0], [0]))
                dpadded[:, :, rows, columns] += np.tensordot(dout[:, :, i, j], w, axes=([1], [0]))
        db = dout.sum(axis=(0, 2, 3))
        dx = dpadded[:, :, pad : pad + x.shape[2], pad : pad + x.shape[3]]
        return dx, dw, db

    def max_pool_forward(self, x, size):
        """Non-overlapping size×size windows."""
        n, c, height, width = x.shape
        windows = x.reshape(n, c, height // size, size, width // size, size)
        windows = windows.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, height // size, -1, size * size)
        return windows.max(axis=-1), (windows, x.shape, size)

    def max_pool_backward(self, dout, cache):
        """The gradient goes to the first maximum of each window (ties: one of them)."""
        windows, shape, size = cache
        mask = np.arange(size * size) == windows.argmax(axis=-1)[..., None]
        dwindows = mask * dout[..., None]
        n, c, height, width = shape
        dwindows = dwindows.reshape(n, c, height // size, width // size, size, size)
        return dwindows.transpose(0, 1, 2, 4, 3, 5).reshape(shape)

    def dropout_forward(self, x, keep):
        """Dropout while training (scaled by ``keep`` at test time): the mask is drawn
        from NumPy's global RNG."""
        mask = (np.random.rand(*x.shape) < keep).astype(x.dtype)
        return x * mask, mask

    def dropout_backward(self, dout, cache):
        mask = cache
        return dout * mask
