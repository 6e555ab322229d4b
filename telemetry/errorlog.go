package telemetry

import (
	"log/slog"
	"sync"
	"time"
)

// ErrorHandler receives the OpenTelemetry SDK's internal errors (install it
// with otel.SetErrorHandler). Left alone, the SDK prints them unstructured
// to stderr, which breaks JSON logs, and it reports a collector outage on
// every failed export while the loss reporter already summarizes those. So
// one error per interval is logged at Warn, with how many were held back
// since the last one; every error is logged at Debug.
type ErrorHandler struct {
	logger   *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu         sync.Mutex
	last       time.Time // when an error was last logged at Warn
	suppressed int       // errors since then
}

// NewErrorHandler logs to logger, at Warn at most once per interval
// (a non-positive interval logs every error at Warn).
func NewErrorHandler(logger *slog.Logger, interval time.Duration) *ErrorHandler {
	return &ErrorHandler{logger: logger, interval: interval, now: time.Now}
}

// Handle implements otel.ErrorHandler.
func (h *ErrorHandler) Handle(err error) {
	if err == nil {
		return
	}
	h.mu.Lock()
	now := h.now()
	warn := h.interval <= 0 || h.last.IsZero() || now.Sub(h.last) >= h.interval
	held := h.suppressed
	if warn {
		h.last, h.suppressed = now, 0
	} else {
		h.suppressed++
	}
	h.mu.Unlock()
	if warn {
		h.logger.Warn("opentelemetry sdk error", "err", err, "held_back", held, "interval", h.interval)
		return
	}
	h.logger.Debug("opentelemetry sdk error", "err", err)
}
