package netfilter

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"time"
)

// CleanupStale removes, in the calling thread's network namespace, what
// sessions that are no longer running left behind: their legacy rules and
// chains, their nf_tables tables, and their nf_log binding, which it
// restores from the state file. A session is stale when its process is gone
// (killed, or its pid reused), or, with maxAge above zero, when it started
// more than maxAge ago. The engine calls it before arming a node.
func CleanupStale(maxAge time.Duration) ([]Session, error) {
	return cleanup(func(s Session) bool {
		return !s.Alive() || (maxAge > 0 && time.Since(s.Started) > maxAge)
	})
}

// CleanupAll removes, in the calling thread's network namespace, what every
// session added, running or not, and restores the nf_log binding: the work
// of `kubectl nettrace cleanup`.
func CleanupAll() ([]Session, error) {
	return cleanup(func(Session) bool { return true })
}

// cleanup removes what the sessions that stale selects added, and returns
// them, sorted by id.
func cleanup(stale func(Session) bool) ([]Session, error) {
	h, err := currentNetns()
	if err != nil {
		return nil, err
	}
	defer h.close()
	removed := map[string]Session{}
	var errs []error

	if save, err := readLegacy(h); err != nil {
		if !commandMissing(err) {
			errs = append(errs, err)
		}
	} else {
		ids := map[string]bool{}
		for id, s := range legacySessions(save) {
			if stale(s) {
				ids[id], removed[id] = true, s
			}
		}
		if len(ids) > 0 {
			errs = append(errs, removeLegacySessions(h, ids))
		}
	}

	if tables, err := listNftTables(h); err != nil {
		if !commandMissing(err) {
			errs = append(errs, err)
		}
	} else if sessions, refs, err := nftSessions(h, tables); err != nil {
		errs = append(errs, err)
	} else {
		for id, s := range sessions {
			if stale(s) {
				removed[id] = s
				errs = append(errs, deleteNftTable(h, refs[id]))
			}
		}
	}

	if b, err := newNfLogBinding(h); err != nil {
		errs = append(errs, err)
	} else if owner, restored, err := b.restore(stale); err != nil {
		errs = append(errs, err)
	} else if restored {
		if _, ok := removed[owner.ID]; !ok {
			removed[owner.ID] = owner
		}
	}

	sessions := slices.SortedFunc(maps.Values(removed), func(a, b Session) int {
		return strings.Compare(a.ID, b.ID)
	})
	return sessions, errors.Join(errs...)
}
