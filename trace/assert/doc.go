// Package assert checks traced paths against expectations, for CI: a file
// of cases (docs/assert.md describes it, docs/paths.yaml is one)
// names flows as `kubectl nettrace SOURCE TARGET` takes them and what each
// path must show: the NAT rewrites and where they lead, the tunnel between
// nodes, the rules hit and not hit, and how the path ends. Parse reads the
// file and reports every mistake with its line; Run traces each case and
// Check compares its path; WriteReport says, for each failure, what was
// expected and what was observed, with the observed hops; WriteJUnit
// writes the results as JUnit XML.
package assert
