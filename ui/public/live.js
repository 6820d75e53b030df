// useLive(load, deps): the page's data, loaded once and again whenever Marathon's event stream
// reports a change (coalesced: at most one reload in flight, one more queued).
import {useEffect, useRef, useState} from "preact/hooks";
import {onEvent} from "./api.js";

export function useLive(load, deps = [], {events = true} = {}) {
  const [state, setState] = useState({data: null, error: null, loadedAt: null});
  const running = useRef(false);
  const again = useRef(false);
  const alive = useRef(true);
  const marked = useRef(false);
  useEffect(() => {
    alive.current = true;
    const run = async () => {
      if (running.current) {
        again.current = true;
        return;
      }
      running.current = true;
      try {
        const data = await load();
        if (alive.current) {
          setState({data, error: null, loadedAt: new Date()});
          if (!marked.current) {
            // The first data on screen by the next frame: bench/ui_pages.py reads these marks as
            // the page's load time (later reloads, on events, are not part of loading the page).
            marked.current = true;
            requestAnimationFrame(() => performance.mark("navstar:rendered"));
          }
        }
      } catch (error) {
        if (alive.current) setState((old) => ({...old, error}));
      } finally {
        running.current = false;
        if (again.current && alive.current) {
          again.current = false;
          run();
        }
      }
    };
    run();
    const off = events ? onEvent(() => run()) : () => {};
    return () => {
      alive.current = false;
      off();
    };
  }, deps);
  return state;
}

export function age(since) {
  if (!since) return "";
  const seconds = Math.max(0, Math.round((Date.now() - new Date(since).getTime()) / 1000));
  if (seconds < 90) return `${seconds} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}
