package main

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// spinner shows on a terminal what a cluster trace is waiting for, on one
// line that it redraws, and clears the line when stopped.
type spinner struct {
	w    io.Writer
	mu   sync.Mutex
	msg  string
	quit chan struct{}
	done chan struct{}
	once sync.Once
}

var spinnerFrames = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

// startSpinner starts drawing on w, a terminal.
func startSpinner(w io.Writer) *spinner {
	s := &spinner{w: w, msg: "starting the trace", quit: make(chan struct{}), done: make(chan struct{})}
	go s.spin()
	return s
}

func (s *spinner) spin() {
	defer close(s.done)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for frame := 0; ; frame++ {
		s.mu.Lock()
		fmt.Fprintf(s.w, "\r%s %s\x1b[K", spinnerFrames[frame%len(spinnerFrames)], s.msg)
		s.mu.Unlock()
		select {
		case <-tick.C:
		case <-s.quit:
			s.mu.Lock()
			fmt.Fprint(s.w, "\r\x1b[K")
			s.mu.Unlock()
			return
		}
	}
}

// set changes the message.
func (s *spinner) set(msg string) {
	s.mu.Lock()
	s.msg = msg
	s.mu.Unlock()
}

// pause clears the line while fn writes to the terminal.
func (s *spinner) pause(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprint(s.w, "\r\x1b[K")
	fn()
}

// stop clears the line and stops drawing; later calls do nothing.
func (s *spinner) stop() {
	s.once.Do(func() {
		close(s.quit)
		<-s.done
	})
}
