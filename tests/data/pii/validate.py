"""Validate tests/data/pii/*.jsonl: spans are substrings, ids unique, CARD spans pass Luhn
(13-19 digits after mapping spoken digit words), IBAN spans pass mod-97, SSN/PHONE/UK_NI shape,
and no obvious unlabelled PII outside the spans. Prints counts per type."""
import re, json, sys, collections
TYPES={"CARD","PHONE","EMAIL","SSN","UK_NI","IBAN","ADDRESS"}
MARK=re.compile(r"\[\[([A-Z_]+):(.*?)\]\]")
W={'zero':'0','oh':'0','o':'0','one':'1','two':'2','three':'3','four':'4','five':'5','six':'6','seven':'7','eight':'8','nine':'9'}
def digits(s, strict=True):
    toks=re.findall(r"[A-Za-z]+|\d+", s)
    out=''; mult=1; bad=[]
    for t in toks:
        tl=t.lower()
        if t.isdigit(): out+=t[0]*mult+t[1:]; mult=1
        elif tl=='double': mult=2
        elif tl=='triple': mult=3
        elif tl in W: out+=W[tl]*mult; mult=1
        elif tl in ('dash','plus'): pass
        else: bad.append(t)
    return out,bad
def luhn(s):
    t=0
    for i,c in enumerate(s[::-1]):
        x=int(c)
        if i%2: x*=2; x-=9 if x>9 else 0
        t+=x
    return t%10==0
def iban_ok(s):
    s=re.sub(r"\s","",s).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{10,30}",s): return False
    r=s[4:]+s[:4]
    return int(''.join(str(int(c,36)) for c in r))%97==1
def leaks(rest):
    out=[]
    toks=re.findall(r"[A-Za-z]+|\d+|[^\sA-Za-z\d]", rest)
    runs=[]; cur=[]
    for t in toks:
        tl=t.lower()
        if t.isdigit() or tl in W and tl!='o' or tl in ('double','triple'): cur.append(t)
        elif t in '-,.' : continue
        else:
            if cur: runs.append(cur); cur=[]
    if cur: runs.append(cur)
    for run in runs:
        d,_=digits(' '.join(run))
        for L in range(13,20):
            for i in range(0,len(d)-L+1):
                if luhn(d[i:i+L]) and (i==0 and i+L==len(d)): out.append('luhn-run '+' '.join(run))
    if re.search(r"\S@\S", rest): out.append('email-like '+rest)
    if re.search(r"\b\d{3}-\d{2}-\d{4}\b", rest): out.append('ssn-like '+rest)
    for m in re.finditer(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}", rest):
        if iban_ok(m.group(0)): out.append('iban-like '+m.group(0))
    return out
def validate(path):
    rows=[json.loads(l) for l in open(path)]
    errs=[]; ids=set(); cnt=collections.Counter(); rowcnt=collections.Counter()
    neg=0; empty=0
    for r in rows:
        assert set(r)=={"id","text","pii"}
        if r["id"] in ids: errs.append("dup id "+r["id"])
        ids.add(r["id"])
        t=r["text"]
        seen=set()
        for p in r["pii"]:
            s=p["text"]; cnt[p["type"]]+=1
            if p["type"] not in TYPES: errs.append(f"{r['id']} bad type")
            if s not in t: errs.append(f"{r['id']} not substring: {s}")
            if t.count(s)>1: errs.append(f"{r['id']} ambiguous span occurs twice: {s}")
            if s in seen: errs.append(f"{r['id']} duplicate span")
            seen.add(s)
            if s!=s.strip(): errs.append(f"{r['id']} span has outer whitespace: {s!r}")
            if p["type"]=="CARD":
                d,bad=digits(s)
                if bad: errs.append(f"{r['id']} CARD unknown tokens {bad}")
                if not (13<=len(d)<=19 and luhn(d)): errs.append(f"{r['id']} CARD bad {s} -> {d} len {len(d)}")
            if p["type"]=="IBAN" and not iban_ok(s): errs.append(f"{r['id']} IBAN bad {s}")
            if p["type"]=="SSN":
                d,bad=digits(s)
                if bad or len(d)!=9: errs.append(f"{r['id']} SSN bad {s} -> {d} {bad}")
                elif d[:3] in ('000','666') or d[0]=='9' or d[3:5]=='00' or d[5:]=='0000': errs.append(f"{r['id']} SSN invalid area/group {d}")
            if p["type"]=="PHONE":
                d,bad=digits(s)
                if bad or not (7<=len(d)<=15): errs.append(f"{r['id']} PHONE bad {s} -> {d} {bad}")
            if p["type"]=="UK_NI":
                z=re.sub(r"[\s]","",s).upper()
                # spoken digits
                zz=''
                for tok in re.findall(r"[A-Za-z]+|\d+",s):
                    if tok.lower() in W and len(tok)>1: zz+=W[tok.lower()]
                    elif tok.lower()=='double' or tok.lower()=='triple': zz+='#'+tok.lower()
                    else: zz+=tok.upper()
                zz=re.sub(r"#double(\d)",r"\1\1",zz); zz=re.sub(r"#triple(\d)",r"\1\1\1",zz)
                if not re.fullmatch(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]\d{6}[A-D]",zz) and zz not in ("QQ123456C",): errs.append(f"{r['id']} NI bad {s} -> {zz}")
                elif zz[:2] in ("BG","GB","KN","NK","NT","TN","ZZ"): errs.append(f"{r['id']} NI bad prefix {zz}")
            if p["type"]=="EMAIL" and not ('@' in s or re.search(r"\bat\b.*\bdot\b",s)): errs.append(f"{r['id']} EMAIL odd {s}")
        # hard-negative: text outside pii has digits/number words/keywords
        rest=t
        for p in r["pii"]: rest=rest.replace(p["text"]," ")
        for w in leaks(rest): errs.append(f"{r['id']} possible unlabeled PII: {w}")
        if not r["pii"]: empty+=1
        if not r["pii"] or re.search(r"\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|twenty|thirty|forty|fifty|hundred|thousand|oh)\b",rest,re.I):
            neg+=1
        for ty in {p['type'] for p in r['pii']}: rowcnt[ty]+=1
    multi=sum(1 for r in rows if len({p['type'] for p in r['pii']})>=2)
    print(f"{path}: rows={len(rows)} empty={empty} lookalike_or_empty={neg} ({100*neg/len(rows):.0f}%) multi-type rows={multi}")
    print("  spans:", dict(sorted(cnt.items())), "total", sum(cnt.values()))
    for e in errs: print("  ERR", e)
    return rows,cnt,errs
if __name__=="__main__":
    import os
    here=os.path.dirname(os.path.abspath(__file__))
    bad=0
    for name in ("dev.jsonl","test.jsonl"):
        _,_,errs=validate(os.path.join(here,name)); bad+=len(errs)
    sys.exit(1 if bad else 0)
