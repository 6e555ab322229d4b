package bus

// TODO(lead): replaced by the durable branch
func WithDataDir(dir string) Option { return optionFunc(func(*options) {}) }

// TODO(lead): replaced by the durable branch
func (c *Consumer) NackReason(seq uint64, reason string) error { return c.Nack(seq) }
