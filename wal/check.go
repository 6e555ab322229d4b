package wal

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// Report is what Check found in a log directory, or what Salvage did to it.
type Report struct {
	Dir      string
	Segments []SegmentReport
	// Live counts the unacked events Open would give back (up to the first
	// damage), NextSeq the seq the next append would get.
	Live    int
	NextSeq uint64
}

// SegmentReport describes one segment file.
type SegmentReport struct {
	Name    string
	Size    int64
	Records int
	// ValidBytes is where the valid records end.
	ValidBytes int64
	// TornBytes is a torn tail at the end of the last segment, which Open
	// cuts by itself (Salvage cuts it too).
	TornBytes int64
	// Damage describes a checksum or format error before the end of the
	// log (with its offset); Open refuses the directory while it is there.
	Damage string
	// MovedTo is where Salvage moved the damaged file; the segment's name
	// then holds only the records before the damage.
	MovedTo string
	// Superseded says a newer segment holds the whole state: this one is
	// a left-over of a rotation, not read, and removed by the next Open.
	Superseded bool
}

// Damaged says whether any segment has damage Open refuses.
func (r Report) Damaged() bool {
	for _, s := range r.Segments {
		if s.Damage != "" && s.MovedTo == "" {
			return true
		}
	}
	return false
}

// String is the report for an operator, one line per segment.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d segment(s), %d unacked event(s), next seq %d\n", r.Dir, len(r.Segments), r.Live, r.NextSeq)
	for _, s := range r.Segments {
		if s.Superseded {
			fmt.Fprintf(&b, "  %s: superseded by a newer segment, not read (removed at open)\n", filepath.Base(s.Name))
			continue
		}
		fmt.Fprintf(&b, "  %s: %d bytes, %d records", filepath.Base(s.Name), s.Size, s.Records)
		switch {
		case s.TornBytes > 0:
			fmt.Fprintf(&b, ", torn tail of %d bytes at offset %d (cut at open)", s.TornBytes, s.ValidBytes)
		case s.Damage != "":
			fmt.Fprintf(&b, ", DAMAGED %s; %d bytes after offset %d", s.Damage, s.Size-s.ValidBytes, s.ValidBytes)
		default:
			b.WriteString(", ok")
		}
		if s.MovedTo != "" {
			fmt.Fprintf(&b, "; moved aside to %s, the records before the damage kept", filepath.Base(s.MovedTo))
		}
		b.WriteByte('\n')
	}
	if r.Damaged() {
		b.WriteString("the log is damaged: `eventbus-sidecar wal salvage` keeps every record before the damage and moves the damaged segment aside\n")
	}
	return b.String()
}

// Check reads every segment in dir without changing anything and reports
// what it found. The error wraps ErrCorrupt when Open would refuse the
// directory; a torn tail alone is not an error. opts supplies MaxRecord
// and FS (zero values for the defaults).
func Check(ctx context.Context, dir string, opts Options) (Report, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return Report{}, err
	}
	st, err := scanDir(ctx, opts.FS, dir, opts.MaxRecord, false)
	if err != nil {
		return Report{}, err
	}
	r := report(dir, st)
	if r.Damaged() {
		return r, fmt.Errorf("%w: %s", ErrCorrupt, dir)
	}
	return r, nil
}

func report(dir string, st *state) Report {
	r := Report{Dir: dir, Live: len(st.live), NextSeq: st.nextSeq}
	for _, s := range st.segs {
		sr := SegmentReport{Name: s.name, Size: s.size, Records: s.records, ValidBytes: s.end, Superseded: s.superseded}
		if s.torn {
			sr.TornBytes = s.tornBytes()
		} else if s.damage != nil {
			sr.Damage = s.damage.Error()
		}
		r.Segments = append(r.Segments, sr)
	}
	return r
}

// Salvage repairs dir so that Open accepts it: it locks the directory like
// Open, cuts a torn tail, and for every damaged segment moves the file
// aside (name + ".damaged") and writes in its place the records that
// precede the damage. Nothing is skipped silently: the report names every
// file moved and the bytes after each damage, which stay in the moved file
// for an expert to look at.
func Salvage(ctx context.Context, dir string, opts Options) (Report, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return Report{}, err
	}
	lock, err := opts.FS.Lock(filepath.Join(dir, "LOCK"))
	if err != nil {
		return Report{}, fmt.Errorf("wal: salvage %s: %w", dir, err)
	}
	defer lock.Close()
	st, err := scanDir(ctx, opts.FS, dir, opts.MaxRecord, false)
	if err != nil {
		return Report{}, err
	}
	r := report(dir, st)
	for i := range st.segs {
		s := &st.segs[i]
		switch {
		case s.damage == nil:
		case s.torn:
			if err := cutTail(opts.FS, s); err != nil {
				return r, err
			}
		default:
			moved, err := moveAside(opts.FS, s)
			if err != nil {
				return r, err
			}
			r.Segments[i].MovedTo = moved
		}
	}
	if err := opts.FS.SyncDir(dir); err != nil {
		return r, fmt.Errorf("wal: salvage: sync directory %s: %w", dir, err)
	}
	// Report what Open will now find.
	after, err := scanDir(ctx, opts.FS, dir, opts.MaxRecord, true)
	if err != nil {
		return r, fmt.Errorf("wal: salvage left damage: %w", err)
	}
	r.Live, r.NextSeq = len(after.live), after.nextSeq
	return r, nil
}

// moveAside renames a damaged segment and rewrites its valid prefix under
// the original name.
func moveAside(fsys FS, s *segScan) (string, error) {
	names, err := fsys.ReadDir(filepath.Dir(s.name))
	if err != nil {
		return "", fmt.Errorf("wal: salvage: %w", err)
	}
	moved := s.name + ".damaged"
	for n := 1; slices.Contains(names, filepath.Base(moved)); n++ {
		moved = fmt.Sprintf("%s.damaged.%d", s.name, n)
	}
	data, err := fsys.ReadFile(s.name)
	if err != nil {
		return "", fmt.Errorf("wal: salvage: read %s: %w", s.name, err)
	}
	if err := fsys.Rename(s.name, moved); err != nil {
		return "", fmt.Errorf("wal: salvage: move %s aside: %w", s.name, err)
	}
	if s.end < headerSize {
		return moved, nil // nothing valid to keep
	}
	f, err := fsys.OpenFile(s.name, osCreateFlags, 0o600)
	if err != nil {
		return moved, fmt.Errorf("wal: salvage: create %s: %w", s.name, err)
	}
	_, err = f.WriteAt(data[:s.end], 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return moved, fmt.Errorf("wal: salvage: write the valid prefix of %s: %w", s.name, err)
	}
	return moved, nil
}
