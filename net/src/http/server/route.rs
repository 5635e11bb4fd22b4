//! Routes: exact paths for whole-request handlers, prefixes for streaming ones.

use std::collections::HashMap;
use std::sync::Arc;

use super::{ProcHandler, RouteLimits};
use crate::http::{Request, RequestHead, Response};

/// Makes the streaming handler of one request.
pub(crate) type ProcFactory = Arc<dyn Fn(&RequestHead) -> Box<dyn ProcHandler> + Send + Sync>;
/// A whole-request handler.
pub(crate) type SimpleFn = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

pub(crate) enum RouteKind {
    /// Streaming callbacks on the worker.
    Proc(ProcFactory),
    /// Whole request in, response out; on a proc thread, or on the worker when `inline`.
    Simple { f: SimpleFn, inline: bool },
}

pub(crate) struct Route {
    pub(crate) kind: RouteKind,
    pub(crate) limits: RouteLimits,
}

/// Exact matches first, then the longest matching prefix.
#[derive(Default)]
pub(crate) struct Router {
    routes: Vec<Route>,
    exact: HashMap<String, usize>,
    /// Longest first.
    prefixes: Vec<(String, usize)>,
}

impl Router {
    pub(crate) fn add_exact(&mut self, path: &str, route: Route) {
        self.routes.push(route);
        self.exact.insert(path.to_string(), self.routes.len() - 1);
    }

    pub(crate) fn add_prefix(&mut self, prefix: &str, route: Route) {
        self.routes.push(route);
        self.prefixes.retain(|(p, _)| p != prefix);
        self.prefixes.push((prefix.to_string(), self.routes.len() - 1));
        self.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    }

    pub(crate) fn find(&self, path: &str) -> Option<usize> {
        // A handful of routes is the common case: comparing strings beats hashing them.
        let exact = if self.exact.len() <= 8 {
            self.exact.iter().find(|(p, _)| p.as_str() == path).map(|(_, &i)| i)
        } else {
            self.exact.get(path).copied()
        };
        if let Some(i) = exact {
            return Some(i);
        }
        self.prefixes.iter().find(|(p, _)| path.starts_with(p.as_str())).map(|&(_, i)| i)
    }

    pub(crate) fn get(&self, i: usize) -> &Route {
        &self.routes[i]
    }
}
