import json, sys, statistics as st
for p in sys.argv[1:]:
    d = json.load(open(p))
    def ans(sc, m): return 100 * st.mean(d["scenarios"][sc][m][t] for t in d["answerable"][sc])
    def cans(sc): return 100 * st.mean(d["scenarios"]["complete"]["rmm+avr"][t] for t in d["answerable"][sc])
    out = [f"{p:28s} complete {100*d['scenarios']['complete']['rmm+avr']['overall']:.1f}"]
    for sc in ("audio_missing", "visual_missing"):
        out.append(f"{sc[:5]}: C {cans(sc):.1f} zf {ans(sc,'zero_fill'):.1f} rmm {ans(sc,'rmm'):.1f} r+a {ans(sc,'rmm+avr'):.1f} gap {100*d['gap_closed'][sc]['answerable_types']:.0f}%")
    print(" | ".join(out))
