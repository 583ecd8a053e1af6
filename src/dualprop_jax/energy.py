"""Equilibrium propagation and contrastive Hebbian learning: placeholder, being written."""


def _ep_grad(net, params, x, y, rule):
    raise NotImplementedError


def _chl_grad(net, params, x, y, rule):
    raise NotImplementedError


def _predict(net, params, x, rule):
    raise NotImplementedError
