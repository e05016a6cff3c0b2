"""The book's figures, one module per section (`layers`, `rewind`, `double_descent`,
`gradients`, `methods`); each function draws from tables the compute modules return and returns
the figure. The style they share is `memgeo.plots`."""
