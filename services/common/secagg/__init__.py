"""Secure aggregation (issue #14), the pieces both sides share: pure Python, numpy and
``cryptography``; never imports the server or the client.

- :mod:`.crypto`: X25519 key agreement, AES-GCM share encryption bound to (round, task, sender,
  recipient), and the AES-256-CTR mask generator (masks as uint32 words, block by block);
- :mod:`.shamir`: t-of-m Shamir sharing of 32-byte secrets over GF(2^521 - 1);
- :mod:`.graph`: the SecAgg+ neighbour graph (complete when n <= k + 1);
- :mod:`.quantize`: clipping, stochastic rounding to integers mod 2^bits, the scale and its bound;
- :mod:`.params`: a round's parameters as both sides derive them.

The protocol is Bonawitz et al. (CCS 2017) on the sparse graph of Bell et al. (CCS 2020); see
docs/secure-aggregation.md."""
