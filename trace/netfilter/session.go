package netfilter

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Names and tags that mark what a session adds to a node.
const (
	// tagPrefix starts the comment on a session's legacy jump rules and on
	// its nf_tables table: "nettrace:<id>:<unix-start>:<pid>".
	tagPrefix = "nettrace:"
	// legacyChainPrefix names a session's legacy chain: "NETTRACE-<id>".
	legacyChainPrefix = "NETTRACE-"
	// nftTablePrefix names a session's nf_tables table: "nettrace_<id>".
	nftTablePrefix = "nettrace_"
)

// Session identifies one tracer: the rules, table and nf_log binding it adds
// carry its tag, so that they can be found and removed even when the tracer
// died without closing.
type Session struct {
	// ID is eight hex digits, unique per tracer.
	ID string
	// PID is the tracer's process id; zero when only the session's chain or
	// table was found, without its tag.
	PID int
	// Started is when the session armed, to the second.
	Started time.Time
}

// newSession returns a session of this process, started now.
func newSession() (Session, error) {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return Session{}, fmt.Errorf("making a session id: %w", err)
	}
	return Session{ID: hex.EncodeToString(b), PID: os.Getpid(), Started: time.Unix(time.Now().Unix(), 0)}, nil
}

// Tag is the comment that marks what the session added.
func (s Session) Tag() string {
	return fmt.Sprintf("%s%s:%d:%d", tagPrefix, s.ID, s.Started.Unix(), s.PID)
}

// parseTag parses a tag made by Tag.
func parseTag(tag string) (Session, bool) {
	rest, ok := strings.CutPrefix(tag, tagPrefix)
	if !ok {
		return Session{}, false
	}
	fields := strings.Split(rest, ":")
	if len(fields) != 3 || !validID(fields[0]) {
		return Session{}, false
	}
	started, err1 := strconv.ParseInt(fields[1], 10, 64)
	pid, err2 := strconv.Atoi(fields[2])
	if err1 != nil || err2 != nil {
		return Session{}, false
	}
	return Session{ID: fields[0], PID: pid, Started: time.Unix(started, 0)}, true
}

func validID(id string) bool {
	if len(id) != 8 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

func (s Session) legacyChain() string { return legacyChainPrefix + s.ID }
func (s Session) nftTable() string    { return nftTablePrefix + s.ID }

// Alive reports whether the session's process still runs: its pid exists,
// is not a zombie, and was not reused by a process started after the
// session.
func (s Session) Alive() bool {
	if s.PID <= 0 {
		return false
	}
	started, zombie, err := processStart(s.PID)
	if err != nil || zombie {
		return false
	}
	// /proc gives the start to a clock tick and the boot time to a second.
	return !started.After(s.Started.Add(2 * time.Second))
}

// processStart returns when process pid started and whether it is a zombie.
func processStart(pid int) (time.Time, bool, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return time.Time{}, false, err
	}
	// The command name, in parentheses, may hold spaces: fields are counted
	// from the last ')'. After it come field 3 (state) … field 22 (starttime).
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return time.Time{}, false, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 20 {
		return time.Time{}, false, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	ticks, err := strconv.ParseInt(fields[19], 10, 64)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("parsing start of process %d: %w", pid, err)
	}
	boot, err := bootTime()
	if err != nil {
		return time.Time{}, false, err
	}
	// USER_HZ, the unit of starttime, is 100 on every Linux architecture.
	const userHZ = 100
	started := boot.Add(time.Duration(ticks) * time.Second / userHZ)
	return started, fields[0] == "Z", nil
}

// bootTime reads the boot time from /proc/stat.
func bootTime() (time.Time, error) {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, fmt.Errorf("reading boot time: %w", err)
	}
	for _, line := range strings.Split(string(stat), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			sec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, fmt.Errorf("parsing boot time %q: %w", v, err)
			}
			return time.Unix(sec, 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("no btime in /proc/stat")
}
